"""The DataGate wire protocol, with no Django and no I/O: messages, the session machine (its
error codes are the shared catalogue, core/errors.py)."""
