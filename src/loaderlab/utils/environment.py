"""Environment variables through which a sweep tells its jobs where they belong."""

PARENT_RUN_ENV = "LOADERLAB_PARENT_RUN_ID"  # set by the sweep callback
SWEEP_ID_ENV = "LOADERLAB_SWEEP_ID"  # set by the sweep callback
ISOLATED_ENV = "LOADERLAB_PROCESS_ISOLATED"  # "1" in a job the isolated launcher started
SWEPT_KEYS_ENV = "LOADERLAB_SWEPT_KEYS"  # the keys the sweep varies, comma-separated, for run names
