from kinemesh.services.cli import main

raise SystemExit(main())
