from modelops_calabaria.models.compartmental import BUILTINS

seir = BUILTINS["seir"]  # the same simulation under another entrypoint
