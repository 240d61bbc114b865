"""The functional API: argument checking, then one kernel call."""
