"""Pure decisions with an explicit `now`: transitions, retries, cron next-fire, options."""
