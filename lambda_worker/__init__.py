"""The worker side of dask-wren: the Lambda handler and the local runtime that hosts it."""
