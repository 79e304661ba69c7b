"""Local deployments (`dagnats cluster`) and the crash-recovery drill (`dagnats drill`)."""
