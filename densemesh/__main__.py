from densemesh.cli import main

raise SystemExit(main())
