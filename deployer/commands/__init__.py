"""Remote commands as data: pure functions returning scripts, rendered (quoted, masked) later."""
