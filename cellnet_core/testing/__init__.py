"""Test helpers shipped with the core: a pytest plugin and contract test classes."""
