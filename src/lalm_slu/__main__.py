from lalm_slu.cli import main

raise SystemExit(main())
