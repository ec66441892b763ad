"""Media types and annotation keys, each spelled once.

Sources: OCI image-spec (manifest.md, image-index.md, image-layout.md), CNCF ModelPack
(docs/spec.md, docs/annotations.md), Ollama (manifest/layer.go media types), Docker distribution.

Pure module: constants only.
"""

# OCI and Docker manifests and indexes
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

# CNCF ModelPack
MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MODELPACK_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
MODELPACK_DOC = "application/vnd.cncf.model.doc.v1.raw"
# weights packed as a tar (modctl --raw=false, KitOps --use-model-pack): ".tar", ".tar+gzip", ".tar+zstd"
MODELPACK_WEIGHT_TAR = "application/vnd.cncf.model.weight.v1.tar"
MODELPACK_PREFIX = "application/vnd.cncf.model."
# the spec's names before it moved into the CNCF (dragonflyoss/model-spec), which modctl 0.2 still writes on
# purpose (its pkg/backend/build/legacy.go): read as the same types; modelpkg writes only the CNCF names
MODELPACK_LEGACY_PREFIX = "application/vnd.cnai.model."

# Ollama (manifest/layer.go); "prompt" is the legacy name of "template" and is still read
OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_ADAPTER = "application/vnd.ollama.image.adapter"
OLLAMA_PROJECTOR = "application/vnd.ollama.image.projector"
OLLAMA_TEMPLATE = "application/vnd.ollama.image.template"
OLLAMA_PROMPT = "application/vnd.ollama.image.prompt"
OLLAMA_SYSTEM = "application/vnd.ollama.image.system"
OLLAMA_PARAMS = "application/vnd.ollama.image.params"
OLLAMA_MESSAGES = "application/vnd.ollama.image.messages"
OLLAMA_LICENSE = "application/vnd.ollama.image.license"
# Ollama's safetensors models: one layer per tensor (server/internal/manifest: "...tensor; name=...")
OLLAMA_TENSOR = "application/vnd.ollama.image.tensor"

# Annotations
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "org.opencontainers.image.created"
MODELPACK_FILEPATH = "org.cncf.model.filepath"
MODELPACK_LEGACY_FILEPATH = "org.cnai.model.filepath"  # modctl 0.2's (see MODELPACK_LEGACY_PREFIX)
ROLE = "dev.modelpkg.role"
CONTEXT_LENGTH = "dev.modelpkg.context_length"  # on the weights layer: the GGUF's trained context
MODELFILE = "dev.modelpkg.modelfile"
FORMAT_VERSION = "dev.modelpkg.format.version"

# Docker Model Runner (docker/model-runner pkg/distribution/types/config.go; oci-model-artifacts.md section 1)
DMR_CONFIG = "application/vnd.docker.ai.model.config.v0.1+json"
DMR_CONFIG_V02 = "application/vnd.docker.ai.model.config.v0.2+json"
DMR_GGUF = "application/vnd.docker.ai.gguf.v3"
DMR_LICENSE = "application/vnd.docker.ai.license"
DMR_MMPROJ = "application/vnd.docker.ai.mmproj"
DMR_CHAT_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"

# KitOps ModelKits (kitops-ml/kitops pkg/lib/constants/mediaType.go): layers are tars, optionally gzipped
KITOPS_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
KITOPS_PREFIX = "application/vnd.kitops.modelkit."
KITOPS_MODEL_KINDS = ("model", "modelpart")  # layer kinds that may hold the GGUF

DERIVED = "dev.modelpkg.derived"  # on an index.json entry: {layer digest: derived blob digest}, e.g. a GGUF from a tar

# Signatures: cosign's layout (sigstore/cosign specs/SIGNATURE_SPEC.md, pkg/types, pkg/oci/static)
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"  # cosign's OCI 1.1 referrer type
COSIGN_SIGNATURE = "dev.cosignproject.cosign/signature"  # layer annotation: base64 DER ECDSA signature
# cosign v3's default: a Sigstore bundle (a DSSE envelope around an in-toto statement) as an OCI 1.1 referrer
# (sigstore/cosign pkg/oci/remote WriteAttestationNewBundleFormat; sigstore/protobuf-specs bundle v0.3)
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIGSTORE_BUNDLE_PREFIX = "application/vnd.dev.sigstore.bundle"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"  # the predicate type of `cosign sign`'s statement
IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
ATTACHED = "dev.modelpkg.attached"  # store index entry: digests of signature manifests kept with the model
SOURCE_INDEX = "dev.modelpkg.index"  # store index entry: the image index a manifest was pulled through
# store index entry: how the name got there; only "pull" is written (pull --all and outdated refresh those,
# every other name is local: created, imported, loaded, copied)
NAME_SOURCE = "dev.modelpkg.source"
