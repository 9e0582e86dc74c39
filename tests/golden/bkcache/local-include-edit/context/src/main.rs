fn main() {1}
