"""Environment variables through which the isolated launcher tells its jobs how they run."""

ISOLATED_ENV = "LOADERLAB_PROCESS_ISOLATED"  # "1" in a job the isolated launcher started
