"""The DataGate wire protocol, with no Django and no I/O: messages, errors, the session machine."""
