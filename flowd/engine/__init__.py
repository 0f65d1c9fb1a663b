"""The daemon: worker lifecycle, claim loop, runner, heartbeats, workflows, cron."""
