import sys

from sparseseg.cli import main

sys.exit(main())
