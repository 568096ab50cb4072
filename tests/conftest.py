"""Pytest puts this folder on sys.path (a rootdir conftest in the default import mode), so
test modules anywhere below share its helpers by plain import (`from ports import free_port`)."""
