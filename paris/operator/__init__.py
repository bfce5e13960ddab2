"""The Paris operator: `kopf run -m paris.operator` registers the handlers.

ParisExpert -> one batch/v1 Job per expert; ParisRouter -> a router-training Job, then a
Deployment + Service running `paris serve`. Never imports torch: the operator image has none.
"""

from paris.operator import handlers as handlers
