# Like the real module: needs the tacto submodule, which a fresh checkout leaves empty.
import tacto  # noqa: F401
