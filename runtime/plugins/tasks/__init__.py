"""The task service: task calls routed to the runtime that runs (or will run) the task."""
