"""Real tool servers the tests run on 127.0.0.1 (a strict contract checker, a fault injector) and helpers."""
