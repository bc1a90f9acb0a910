"""Defense plugins: one file each, registered with ``@register("defense", name)``."""
