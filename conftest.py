pytest_plugins = ["parley_devstack.pytest_plugin"]
