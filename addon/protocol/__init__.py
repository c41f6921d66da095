"""What the add-on and the server share, stdlib + numpy only: the wire format (wire.py), its
transport (tls.py, client.py), the result contract and its files (results.py, result_file.py,
official_result.py), person masks (masks.py) and the command-line argument types (cli_args.py).

The server imports these as `addon.protocol.*` (with `PYTHONPATH` = the folder holding `addon/`
and `server/`); nothing here imports bpy or any other part of the add-on, and `addon/__init__.py`
imports nothing at module level, so that import stays light (tests/test_layout.py).
"""
