"""Fake `ament_index_python.packages`: package shares from VW2_FAKE_SHARE_<PACKAGE>."""

import os


class PackageNotFoundError(KeyError):
    pass


def get_package_share_directory(package_name):
    path = os.environ.get(f"VW2_FAKE_SHARE_{package_name.upper()}")
    if not path:
        raise PackageNotFoundError(package_name)
    return path
