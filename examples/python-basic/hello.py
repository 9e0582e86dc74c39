"""Written into the image by the example build; runs once during the build."""
import os
import shutil

import six

greeting = os.environ.get("GREETING", "unset")
curl = shutil.which("curl") or "no curl"
print(f"{greeting} from envkit (six {six.__version__}, {curl})")
