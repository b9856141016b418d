"""Fake calvin_env for the calvin backend tests: the constructors, signatures and
interfaces of the real calvin_env (mees/calvin_env at 797142c) that the backend reaches,
with a toy world instead of pybullet (the drawer follows the tcp's x)."""
__version__ = "0.0.1"
__project__ = "calvin_env"
