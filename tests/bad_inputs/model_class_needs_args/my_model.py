"""A model class that needs a constructor argument."""


class SeirModel:
    outputs = ("cases",)

    def __init__(self, population):
        self.population = population

    def simulate(self, params, seed):
        return {"cases": [0.0] * 10}
