"""The reactive runtime: triggers from NATS into executions recorded on WORKFLOW_HISTORY."""
