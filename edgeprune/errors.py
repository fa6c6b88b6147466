"""One exception hierarchy; the CLI maps it to a one-line message and exit code 2."""


class EdgepruneError(Exception):
    """A user-actionable error: what was wrong, where, and how to fix it."""

    exit_code = 2

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return " — ".join(parts)


class ConfigError(EdgepruneError):
    pass


class ModelError(EdgepruneError):
    pass


class DataError(EdgepruneError):
    pass


class ExportError(EdgepruneError):
    pass


class BudgetError(EdgepruneError):
    pass


class ToolchainError(EdgepruneError):
    pass


class DiskError(EdgepruneError):
    """Not enough space, or the disk filled while writing (nothing half-written is kept)."""


class MachineBusyError(EdgepruneError):
    """Every try at a benchmark ran on an oversubscribed machine (planner/load_guard.py): not bad
    input, so its own exit code; nothing measured under the load was used."""

    exit_code = 3
