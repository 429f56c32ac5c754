from fastclr.cli import main

raise SystemExit(main())
