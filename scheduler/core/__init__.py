"""The pure core: the lesson model, the plan, names, the state machine, records and pictures. No I/O (import-linter)."""
