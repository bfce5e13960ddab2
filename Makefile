# Paris on Kubernetes. `make help` lists the targets.
# kind-* / images / deploy / demo need Docker, kind, kubectl and helm (not available on the dev
# machines of this project, where the tests run the real control plane from binaries and the
# images with buildah instead: see tests/servers and scripts/test-infra).

SHELL := /bin/bash
CLUSTER ?= paris
NAMESPACE ?= paris-system
DEMO_NAMESPACE ?= default
VERSION ?= 0.1.0
TRAINER_IMAGE ?= ghcr.io/paris-dev/paris-trainer:$(VERSION)
OPERATOR_IMAGE ?= ghcr.io/paris-dev/paris-operator:$(VERSION)
PYTHON ?= python
# The fake GPU nodes of examples/k8s/kind.yaml.
GPU_NODES ?= $(CLUSTER)-worker $(CLUSTER)-worker2

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

# ---- generated files and tests ----------------------------------------------------------

.PHONY: crds
crds: ## Regenerate crds/ and charts/paris/crds/ from paris/config.py
	$(PYTHON) -m paris.operator.crds

.PHONY: check-crds
check-crds: ## Fail if the generated CRDs are stale
	$(PYTHON) -m paris.operator.crds --check

.PHONY: lint
lint: ## ruff, mypy, CRD drift, helm lint: scripts/lint, the same as CI
	scripts/lint

.PHONY: test-unit
test-unit: ## Unit tier (no servers)
	$(PYTHON) -m pytest tests/unit -q

.PHONY: test-e2e
test-e2e: ## Operator e2e on the real control plane (eval "$$(scripts/test-infra env)" first)
	$(PYTHON) -m pytest tests/e2e/test_operator.py -x -q

.PHONY: images-local
images-local: ## Build both images without Docker (buildah, as root; cached in $$PARIS_CACHE)
	scripts/test-infra build images

.PHONY: test-images
test-images: images-local ## Image hygiene, then the e2e tier with pods and operator inside the images
	PARIS_POD_RUNTIME=image $(PYTHON) -m pytest tests/e2e -x -q

# ---- a kind cluster (where Docker exists) -------------------------------------------------

.PHONY: images
images: ## Build the trainer and operator images (Docker with BuildKit)
	DOCKER_BUILDKIT=1 docker build -f images/trainer/Dockerfile -t $(TRAINER_IMAGE) .
	DOCKER_BUILDKIT=1 docker build -f images/operator/Dockerfile -t $(OPERATOR_IMAGE) .

.PHONY: kind-up
kind-up: ## Create the kind cluster: three pools, fake GPUs
	kind create cluster --config examples/k8s/kind.yaml --name $(CLUSTER)
	for n in $(GPU_NODES); do \
	  kubectl taint node $$n nvidia.com/gpu=present:NoSchedule --overwrite; \
	  kubectl patch node $$n --subresource=status --type=json \
	    -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"4"}]'; \
	done

.PHONY: kind-load
kind-load: images ## Load the images into the kind nodes
	kind load docker-image --name $(CLUSTER) $(TRAINER_IMAGE) $(OPERATOR_IMAGE)

.PHONY: deploy
deploy: ## helm install the operator and its MinIO store (CRDs included)
	helm upgrade --install paris charts/paris --namespace $(NAMESPACE) --create-namespace \
	  --set image.repository=$(firstword $(subst :, ,$(OPERATOR_IMAGE))) --set image.tag=$(VERSION) \
	  --set trainerImage.repository=$(firstword $(subst :, ,$(TRAINER_IMAGE))) --set trainerImage.tag=$(VERSION) \
	  --set minio.enabled=true --set "storage.secretNamespaces={$(DEMO_NAMESPACE)}" --wait

.PHONY: dataset
dataset: ## Prepare the digits dataset into the chart's MinIO (through a port-forward)
	key() { kubectl -n $(NAMESPACE) get secret paris-s3 -o jsonpath="{.data.$$1}" | base64 -d; }; \
	  kubectl -n $(NAMESPACE) port-forward svc/paris-minio 9000:9000 >/dev/null & pf=$$!; trap "kill $$pf" EXIT; sleep 3; \
	  PARIS_S3_ENDPOINT=127.0.0.1:9000 AWS_ACCESS_KEY_ID="$$(key AWS_ACCESS_KEY_ID)" \
	  AWS_SECRET_ACCESS_KEY="$$(key AWS_SECRET_ACCESS_KEY)" paris data prepare examples/k8s/dataset.yaml

.PHONY: demo
demo: ## Apply the 8 experts and the router; watch them
	kubectl -n $(DEMO_NAMESPACE) apply -f examples/k8s/experts.yaml -f examples/k8s/router.yaml
	kubectl -n $(DEMO_NAMESPACE) get paris

.PHONY: kind-all
kind-all: kind-up kind-load deploy dataset demo ## Everything above, in order

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	kind delete cluster --name $(CLUSTER)
