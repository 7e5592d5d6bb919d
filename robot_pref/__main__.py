from robot_pref.cli import main

raise SystemExit(main())
