import sys

from data_prep.prepare import main

sys.exit(main())
