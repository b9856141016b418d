from pathlib import Path


class InvalidGitRepositoryError(Exception):
    pass


def get_git_commit_hash(repo_path: Path) -> str:
    # The real one asks gitpython, which raises outside a git checkout.
    for p in [Path(repo_path), *Path(repo_path).parents]:
        if (p / ".git").exists():
            return "0" * 40
    raise InvalidGitRepositoryError(str(repo_path))
