"""Code that runs where a task runs: in the worker, a Ray worker or a Ray job."""
