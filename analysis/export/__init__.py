"""Exporters of merge results (PEFT, diffusers, kohya, full delta) and merge recipes."""
from analysis.export.recipe import Recipe, build_recipe, load_recipe, load_recipe_inputs, recipe_sha256, recipe_to_yaml
from analysis.export.writer import export_merge, render_export, zip_directory

__all__ = ["Recipe", "build_recipe", "export_merge", "load_recipe", "load_recipe_inputs", "recipe_sha256",
           "recipe_to_yaml", "render_export", "zip_directory"]
