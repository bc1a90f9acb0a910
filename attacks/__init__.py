"""Attack plugins: one file each, registered with ``@register("attack", name)``."""
