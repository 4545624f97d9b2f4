"""Pure array-API-standard implementations.

Every function here takes ``xp`` as a required keyword, uses only the standard (plus ``array_api_extra``)
and never branches on the backend. Backend-specific code lives in ``softdist._backends``.
"""
