import sys

from nnunet_allstage.cli import main

sys.exit(main())
