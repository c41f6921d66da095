import sys

from .photo import main

sys.exit(main())
