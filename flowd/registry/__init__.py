"""Worker registry: leases, supersede on restart, reaping of expired workers, recovery."""
