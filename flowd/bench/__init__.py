"""`flowd bench`: enqueue and process tasks with real worker processes, report the figures."""
