import sys

from advfeat.cli import main

sys.exit(main())
