"""The DataGate wire protocol, with no Django and no I/O: messages, the session machine.

The envelope every websocket message shares (`core/envelope.py`), the document door
(`core/door.py`) and the error catalogue (`core/errors.py`) are in `core/`: topics use them too.
"""
