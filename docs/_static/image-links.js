// Every figure of the book opens full size in one click: an image that is not already a link
// becomes a link to its own file (the copy Sphinx made under _images/).
document.addEventListener("DOMContentLoaded", () => {
  for (const img of document.querySelectorAll("article img")) {
    if (img.closest("a")) continue;
    const link = document.createElement("a");
    link.href = img.getAttribute("src");
    link.className = "image-link";
    link.title = "open the full-size figure";
    img.replaceWith(link);
    link.appendChild(img);
  }
});
