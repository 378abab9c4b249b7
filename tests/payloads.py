"""A malicious pickle payload shared by the safe-loading tests."""

import os


class Payload:
    """Pickles as a call to `os.system` that creates `marker` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)
