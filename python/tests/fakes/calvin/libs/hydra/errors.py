class HydraException(Exception):
    pass


class MissingConfigException(IOError, HydraException):
    pass


class ConfigCompositionException(HydraException):
    pass


class InstantiationException(HydraException):
    pass
