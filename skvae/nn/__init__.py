"""Pure torch building blocks: layers, exact sparse kernels, loss terms and the models.

Nothing here knows about scikit-learn: :mod:`skvae.base` builds these modules and
:mod:`skvae.train.loop` trains them.
"""
