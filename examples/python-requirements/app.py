print("model server")
