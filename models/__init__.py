"""Model packages shipped with myonode, installed as the package ``myonode_models``."""
