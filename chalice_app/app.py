"""The prediction API: routes only; each view lives in `chalicelib.views`.

GET  /                  ping (JSON) or the index page with a form (Accept: text/html)
GET  /image?image=URL   the verdict on the picture at URL (JSON, or HTML for browsers)
POST /image             the verdict on the picture in the body (image/jpeg|png|gif|webp)
GET  /model             the metadata of the model in use

The same routes under /staging (`/staging`, `/staging/image`, `/staging/model`) answer with
the staging candidate; the routes above answer with production, unless the API is run for
the staging stage (ITSACAT_STAGE=staging, as `itsacat serve --stage staging` does).
"""

from chalice import Chalice, Response
from chalicelib import views
from chalicelib.service import BODY_CONTENT_TYPES

STAGING = "staging"

app = Chalice(app_name="itsacat")
# Picture bodies must reach the function as bytes (API Gateway binary media types).
app.api.binary_types.extend(t for t in BODY_CONTENT_TYPES if t not in app.api.binary_types)


@app.route("/", methods=["GET"])
def index() -> Response:
    return views.index(app.current_request)


@app.route("/image", methods=["GET"])
def image_from_url() -> Response:
    return views.image_from_url(app.current_request)


# Any content type reaches the view, so that a wrong one gets our 415, not Chalice's.
@app.route("/image", methods=["POST"], content_types=["*/*"])
def image_from_body() -> Response:
    return views.image_from_body(app.current_request)


@app.route("/model", methods=["GET"])
def model() -> Response:
    return views.model(app.current_request)


@app.route("/staging", methods=["GET"])
def staging_index() -> Response:
    return views.index(app.current_request, STAGING)


@app.route("/staging/image", methods=["GET"])
def staging_image_from_url() -> Response:
    return views.image_from_url(app.current_request, STAGING)


@app.route("/staging/image", methods=["POST"], content_types=["*/*"])
def staging_image_from_body() -> Response:
    return views.image_from_body(app.current_request, STAGING)


@app.route("/staging/model", methods=["GET"])
def staging_model() -> Response:
    return views.model(app.current_request, STAGING)
